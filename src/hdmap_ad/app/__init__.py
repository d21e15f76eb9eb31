"""The web app over a run's results (Streamlit): ``python -m hdmap_ad app`` or ``make app``.

:mod:`hdmap_ad.app.data` reads what the pages show (no Streamlit), :mod:`hdmap_ad.app.main`
is the Streamlit script, :mod:`hdmap_ad.app.launch` starts it.
"""
