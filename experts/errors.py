"""Typed errors of the expert layer. `server/errors.py` maps each to one HTTP status in one place."""


class ExpertError(Exception):
    """Base class: every refusal from the registry or a backend."""


class ExpertNotFound(ExpertError):
    """No expert of that name is visible in the current registry snapshot."""


class ExpertExists(ExpertError):
    """Registration of a name that is already taken."""


class ExpertGone(ExpertError):
    """The expert was removed or replaced between routing and leasing it; the caller may re-route."""


class AdapterRejected(ExpertError):
    """An adapter that may not or cannot be loaded: outside allowed roots, not safetensors, wrong shape."""


class UploadExists(ExpertError):
    """An upload under a name that another upload holds (or is writing at this moment)."""


class PromptTooLong(ExpertError):
    """The rendered prompt plus the requested completion do not fit the model's context."""


class TemplateRejected(ExpertError):
    """The model's chat template refused the conversation (its roles' order, say, or a final message it
    cannot leave open for `continue_final_message`)."""


class ManifestError(ExpertError):
    """The persistent manifest could not be written; the registry change was rolled back."""


class RegistryMoved(ExpertError):
    """Another gateway changed the shared registry while this write was being prepared; nothing was
    written, and the same request can be sent again."""


class DocumentsRejected(ExpertError):
    """Documents or an index that cannot be used: unparsable upload, unreadable directory, bad segment."""


class EncoderRejected(ExpertError):
    """A retriever's embedding model that may not or cannot be loaded; never silently replaced."""


class AdapterUnavailable(ExpertError):
    """A registered adapter that can no longer be brought onto the device (its stored files were deleted
    or damaged). The expert is taken out of routing and reported as failed; the others keep serving."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"adapter {key!r} could not be activated: {reason}")
        self.key = key


class SamplingRejected(ExpertError):
    """Sampling settings this model cannot apply (a logit_bias token outside its vocabulary)."""


class ConstraintRejected(ExpertError):
    """A structured-output constraint the grammar engine cannot compile (an unsupported or invalid schema)."""


class MixtureRejected(ExpertError):
    """A mixture of experts that cannot be served: a component that is not an adapter, too many components,
    bad weights, or a combined rank over the engine's limit."""


class RowFailed(ExpertError):
    """One request's row of the batch failed (its grammar, sampling or decoding raised): that request gets
    this error, its slot is freed, and every other row of the batch goes on."""


class EngineUnavailable(ExpertError):
    """The generation engine cannot serve (its model thread or engine process failed or stalled); `/health`
    reports the same problem."""
