"""The erase tool (issue 17): remove a data subject's rows from the archive, provably."""
