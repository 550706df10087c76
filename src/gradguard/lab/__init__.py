"""The lab: tasks, models and experiments that reproduce the classic gradient claims.

Needs the ``lab`` extra (scikit-learn, statsmodels, rich). ``gradguard lab list`` shows the
experiments; ``gradguard lab run NAME`` runs one.
"""
