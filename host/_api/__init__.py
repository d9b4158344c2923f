"""Generated code of the Device Plugin API v1beta1 (``protos/api.proto``); do not edit."""
