"""Shapes of the train_tiny model presets (``model.preset``). No torch here: the resource estimate
(robust_unlearning/resources.py) reads them while Snakemake plans, before any job imports torch."""

PRESETS = {
    # ~0.9M params at vocab 3000
    "tiny-llama": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       intermediate_size=512),
    # ~5M params
    "small-llama": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                        intermediate_size=1024),
    # for unit tests only
    "micro-llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        intermediate_size=64),
}
