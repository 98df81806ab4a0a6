"""LAPE: language/culture neurons by activation-probability entropy."""
