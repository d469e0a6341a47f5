"""Generation backends behind the Generator protocol (see base.py)."""
