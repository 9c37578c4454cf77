"""The CLI's output paths (``bench``'s CSV and plots, ``demo``'s PNG), checked before any work:
a bad path fails in a second with the option's name, not in a traceback after minutes of runs."""
import os


def writable_directory(option: str, directory: str) -> str:
    """``directory`` made absolute, created if missing; SystemExit naming ``option`` when it cannot be."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise SystemExit(f"{option}: {directory} is a file, not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"{option}: cannot create the directory {directory} ({e.strerror})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SystemExit(f"{option}: the directory {directory} is not writable")
    return directory


def writable_file(option: str, path: str) -> str:
    """``path`` made absolute, its directory created; SystemExit naming ``option`` when the file
    cannot be written (a directory, an unwritable file or directory)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise SystemExit(f"{option}: {path} is a directory; give the path of a file (in it or elsewhere)")
    writable_directory(option, os.path.dirname(path))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise SystemExit(f"{option}: {path} is not writable")
    return path
