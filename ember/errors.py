"""ember's exceptions. Every error a user can cause is one of these, and its message
names the thing at fault (the node, the op, the input, the file)."""


class EmberError(Exception):
    """Base class of every ember error."""


class ModelError(EmberError):
    """The model itself is malformed, unsupported or cannot be read."""


class InputError(EmberError, ValueError):
    """Feeds passed to a compiled model do not match its signature."""


class IRError(EmberError):
    """The IR breaks one of its invariants (raised by the verifier and the parser)."""


class ExecutionError(EmberError):
    """A node failed while running; the message names the node and op."""


class UnsupportedError(EmberError):
    """A feature, option or target that ember does not provide (yet)."""


class ArtifactError(EmberError):
    """A saved artifact (`.ember` file) cannot be written or read: corrupt, truncated,
    tampered with, or from a newer ember. The message names the member at fault."""
