"""`python -m train`: U-Net training on ADE20K or any dataset in the same layout."""
