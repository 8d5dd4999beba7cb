"""Stage 2, control: what a Gateway API controller decides from a loaded ``Config``.

Attachment, references, addresses, backends and every object's status (conditions),
handed to the compiler as a ``bindings.Resolution``.  Imports config and snapshot types,
never compile.
"""
