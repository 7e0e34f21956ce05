"""Applications: the digits demo (tokenizer, judge, generator, samples, metrics)."""
