"""Defences against adversarial examples: defensive distillation (Papernot et
al. 2016, :mod:`advlib.defences.distillation`) and detection by model mutation
testing (Wang et al. 2019, :mod:`advlib.defences.mutation`)."""
