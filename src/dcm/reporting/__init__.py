"""What the report stage and `dcm compare` write: tables, figures, and the runs they come from."""
