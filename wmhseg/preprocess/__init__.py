"""Preprocessing of raw scans: T1→FLAIR registration, N4, skull stripping, WhiteStripe."""
