"""The `medmoe` command line. Thin: it parses, calls the library, prints."""
