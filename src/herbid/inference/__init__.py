"""What every user of a trained model shares: the bundle, the pixel path, the device and
the one forward pass. Training depends on this package; nothing here depends on training.

* :mod:`herbid.inference.bundle` — the bundle format: save, load, ``as_bundle``;
* :mod:`herbid.inference.pixels` — stored copy or upload → the tensor a model sees;
* :mod:`herbid.inference.sheets` — dataset rows → datasets, row selection, class order;
* :mod:`herbid.inference.device` — device names and autocast modes;
* :mod:`herbid.inference.forward` — the forward pass (logits over TTA views, features);
* :mod:`herbid.inference.taxonomy` — genus and family probabilities from species ones.
"""
