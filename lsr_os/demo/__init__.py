"""The offline demo wing: what lsr-os needs to show itself and test itself without a model hub.

Nothing in the product flow (records, index, search, serve) imports it:

- `world`: a rendered image-caption world (shapes, colours, sizes, textures; captions with synonyms);
- `encoder`: a small dense dual encoder trained on that world, registered as the encoder kind `demo`;
- `synthetic`: a dense-vector world with known concepts (`lsr-os synth`), for training tests and benches;
- `pipeline`: `lsr-os demo`, every step of the real pipeline on the world, end to end.
"""
