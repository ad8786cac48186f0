"""A miniature pretrained CogVideoX world: procedural sprite videos, pixel scorers, the ``mini`` model.

* :mod:`.world` - the video generator, captions, held-out subjects and motions, customization inputs;
* :mod:`.scorers` - identity / motion / text / leakage scores computed from frames (no learned encoders);
* :mod:`.model` - the ``mini`` CogVideoX (real transformer, space-to-depth VAE, word-level T5): build, save, load;
* :mod:`.pretrain` - pretraining the ``mini`` transformer on held-in videos (``python -m dual_adapter miniworld pretrain``).

See docs/miniworld.md.
"""
