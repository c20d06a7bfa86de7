"""Code that runs inside a guest (VM or sandbox). Each module here is stdlib-only and runs on its own."""
