"""Small Python helpers."""


class classproperty(property):
    """A read-only property of the class, e.g. `MistralBackbone.presets`.

    Example:
    >>> class Model:
    ...     @classproperty
    ...     def name(cls):
    ...         return cls.__name__.lower()
    >>> Model.name
    'model'
    """

    def __get__(self, _, owner_cls):
        return self.fget(owner_cls)
