"""The built-in workflow executor: GitHub Actions workflow files run by Smith itself (``smith run``)."""
