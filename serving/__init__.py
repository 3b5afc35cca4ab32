"""The BentoML scoring service, its schemas, and model + feature loading."""
