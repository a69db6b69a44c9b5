"""Experts: models beside the backbone that say something specific about a photo (where the work-zone
objects are, how far away, ...), for training data or as evidence."""
