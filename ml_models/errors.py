"""Errors a user can cause, shared by every layer.

The CLI and the web app turn an :class:`InputError` into one line (``error: ...``) or a 4xx
response; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """A problem with something the user gave us (a file, a setting, a request).

    The message is one sentence that names the input and says what to do about it. It must never
    contain a patient-identifying file name: name the input by its role ("the uploaded file",
    "annotation file labels/0001.txt line 3"), not by a path the user chose for a video.
    """


class VideoValidationError(InputError):
    """A video file that cannot be accepted (not a video, truncated, unsupported, out of limits)."""


class AnnotationFormatError(InputError):
    """An annotation file that does not follow its format; the message names the file and line."""
