"""Compliance reports computed from ledger records alone (issue 15): pure folds over records in time order.

Each report kind (`KINDS`) folds the merged records of a verified ledger into a `Report`: a summary, tables
and charts' series, the same numbers whatever the output format. The shell verifies the ledger, streams
its records in, adds what it verified to the report's header and renders it (gateway/adapters/reports).
"""
