"""orchestra: the web page over batches, scheds and searches (and campaigns, when expegit can be
read). An ASGI app that reads the records through liborchestra and parasearch and acts through
the same calls as the command lines; it never prints."""
