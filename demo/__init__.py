"""``make demo``: simulated Windows hosts, real async jobs, the shipped rulebook reacting.

Run with ``python -m demo`` from the checkout (after ``make setup``); see ``demo.run``.
"""
