"""The study: named experiments over seeds, the reference baselines, and the tables they make."""
