"""Stable error codes: the CLI, the worker protocol and Blender all report these strings."""


class LikenessError(Exception):
    """An expected failure with a stable machine-readable code and a message for people."""

    def __init__(self, code: str, message: str):
        assert code in CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


CODES = {
    "FILE_NOT_FOUND": "the input path does not exist or is not a file",
    "EMPTY_FILE": "the input file has zero bytes",
    "NOT_AN_IMAGE": "the file is not an image format we can read",
    "CORRUPT_IMAGE": "the image is truncated or damaged",
    "IMAGE_TOO_SMALL": "the image is too small to hold a face we can fit",
    "IMAGE_TOO_LARGE": "the image has more than 100 megapixels, its file is over 1 GB, or decoding it needs over 1.5 GB",
    "NO_FACE": "no face was found in the image",
    "FIT_FAILED": "a face was found but the fitted head does not match it well enough to trust",
    "ASSETS_MISSING": "ICT-FaceKit or the MediaPipe model is not installed",
    "OUTPUT_EXISTS": "the output folder exists and would be overwritten",
    "WRITE_FAILED": "the bundle could not be written (folder not writable, disk full)",
    "CANCELLED": "the request was cancelled",
    "BAD_REQUEST": "a worker request that is not valid JSON or lacks fields",
    "BUSY": "the worker is already running a request",
    "INTERNAL": "an unexpected failure (a bug): the message holds the details",
    "EXPORT_FAILED": "the head could not be exported (no Blender or bpy to run the exporter, or it failed)",
}
