"""The tiny teacher: flow-matching training on the toy world (:mod:`.training`) and the probes
that measure what it learned (:mod:`.probes`)."""
