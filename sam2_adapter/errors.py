"""The one error type the project raises for bad user input."""


class InputError(ValueError):
    """Bad user input: the message names the input (annotation id, frame, file) and what was wrong.

    Batch entry points catch it per item, report it, and carry on with the rest of the request.
    """
