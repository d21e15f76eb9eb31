"""An experiment's references and fitted sub-models: reference selection, fitting per gate
assignment (including the reference folds), storage."""
