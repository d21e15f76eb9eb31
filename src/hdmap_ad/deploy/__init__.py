"""Deployment: export a fitted experiment as a self-contained model folder, predict on new maps.

Sits above the pipeline's layers (features, methods, banks, scoring, metrics) and below the
CLI and the web app (``hdmap_ad.app``). Import the submodules directly:

- :mod:`hdmap_ad.deploy.bundle`: the model folder's format, writing and loading it;
- :mod:`hdmap_ad.deploy.export`: the ``export`` step (pipeline outputs -> model folder);
- :mod:`hdmap_ad.deploy.predict`: the ``predict`` step (model folder + maps -> CSV);
- :mod:`hdmap_ad.deploy.render`: anomaly-map images (PNG overlay) and patch locations.
"""
