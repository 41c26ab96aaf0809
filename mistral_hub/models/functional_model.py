import keras


class FunctionalModel(keras.Model):
    """A `keras.Model` whose subclasses may set attributes before `__init__`.

    Backbones and tasks create their layers (and set properties) before the
    functional `__init__` builds the graph. On torch that would register
    modules on a `torch.nn.Module` that is not initialized yet, so those
    early assignments, and property setters, bypass module tracking; the
    functional graph tracks the layers once it is built. Subclasses set
    `self._initialized = True` right after calling `super().__init__`.
    """

    def __setattr__(self, name, value):
        if keras.config.backend() == "torch" and (
            not hasattr(self, "_initialized")
            or isinstance(getattr(type(self), name, None), property)
        ):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)
