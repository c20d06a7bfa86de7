"""One module (or folder) per external system. Each turns its library's errors into ``smith.errors``."""
