"""Extension modules, one per release phase, loaded in filename order by `app.extensions`.

The baseline owns this package so that removing every extension leaves a working app.
"""
