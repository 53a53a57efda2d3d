"""Dataset plugins: the embedded, generated ``shapes`` and two views of scikit-learn's digits."""
