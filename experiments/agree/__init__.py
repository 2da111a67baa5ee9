"""`make agree`: training, serving and scoring agree: served loss = trained loss (`stage`, `loss`,
`served`), adapter = merged (`adapter`)."""
