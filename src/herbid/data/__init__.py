"""Data stage: sources → curation → splits → dataset folders."""
