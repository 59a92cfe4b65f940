"""Load benchmark of the realtime paths: the product on its production shape vs bare Channels."""
