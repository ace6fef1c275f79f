"""Cross-validation: `brats2d crossval` and `brats2d crossval-ensemble`.

    plan.py      settings, folds, the output layout and the finished-fold check (no heavy imports)
    crossval.py  running the folds: preprocess, train and score each (the protocol is its docstring)
    summary.py   the finished folds collected into cv_summary.json; the paired per-patient statistic
    ensemble.py  several cross-validations' fold models averaged, against the first alone
    folds.py     a finished crossval's patients predicted as its plan does (for experiments/)

Imports go one way: plan <- summary <- crossval, plan/summary <- ensemble, plan <- folds.
"""
