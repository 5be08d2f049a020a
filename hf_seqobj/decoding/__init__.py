"""Decoding inside the training step and for evaluation: one package for everything that generates with the model.

- :mod:`~hf_seqobj.decoding.decoder`: :func:`~hf_seqobj.decoding.decoder.decode`, the incremental roll-in decoder
  (a KV cache allocated once, one small token-choice function, DAgger's oracle mixing
  :class:`~hf_seqobj.decoding.decoder.OracleMixing`), and the cross-process agreement of synced decoding
  (:func:`~hf_seqobj.decoding.decoder.all_finished`, :func:`~hf_seqobj.decoding.decoder.global_max`) that the
  backspace decoder shares;
- :mod:`~hf_seqobj.decoding.rollin`: :func:`~hf_seqobj.decoding.rollin.generate_rollin`, a roll-in on a training
  batch under whatever wraps the model (DDP, FSDP, ZeRO-3), the roll-in settings
  (:class:`~hf_seqobj.decoding.rollin.RollinArguments`) and the teacher-forced batch built on a roll-in;
- :mod:`~hf_seqobj.decoding.prompts`: the prompts and targets of decoder-only examples, for roll-ins and for
  evaluation with `generate`;
- :mod:`~hf_seqobj.decoding.models`: :func:`~hf_seqobj.decoding.models.unwrap_model`, the one place the package looks
  through compiled, distributed and PEFT wrappers, and whether a model's forward takes `logits_to_keep`.

SequenceMatch's decoder with the backspace action is :mod:`hf_seqobj.backspace.decoding`; it builds on the decoder's
KV cache layer, token choice and synced-decoding helpers.
"""
