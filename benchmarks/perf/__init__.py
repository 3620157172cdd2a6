"""Performance benchmarks: conversion and loading, ckpt-convert against the baselines a user has today.

Run `python -m benchmarks.perf --help` from the repository root.
"""
