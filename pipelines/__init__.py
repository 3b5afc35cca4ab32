"""Data movement and orchestration: adapters, identity, validation, the lake, features, flows, CLI."""
