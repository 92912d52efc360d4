"""Study: published and measured runs as data for checking and calibrating the predictions."""
