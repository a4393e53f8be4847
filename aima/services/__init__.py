"""Domain operations. Each takes the acting user and its clients as arguments and checks access itself."""
