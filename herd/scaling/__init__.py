"""Scaling laws that predict downstream accuracy: IsoFLOP sweeps (sweep.py), fits (fit.py), the compute planner
(plan.py) and the default downstream task for tiny models (task.py)."""
