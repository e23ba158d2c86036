"""The numerical core. No CLI or Rich imports here; progress goes through plain callbacks."""
