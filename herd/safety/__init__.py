"""Safety as Llama 3 shipped it: Llama Guard 2/3 classifiers and shields, Code Shield, safety evaluation."""
