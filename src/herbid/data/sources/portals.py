"""Live portal sources: an iDigBio or GBIF search turned into one record per specimen image.

Location syntax (URL-query style; a bare text is a scientific name)::

    idigbio:scientificname=Viola&institutioncode=ny&limit=200
    idigbio:Viola sororia
    gbif:scientificName=Pectocarya&institutionCode=NY&limit=300
    gbif:Pectocarya

``limit`` caps how many API results are read (iDigBio media records, GBIF occurrences);
every other parameter goes to the API as a search filter. Only preserved specimens with
still images are asked for. Constructing a source does no network I/O; :meth:`records`
pages through the API (several pages at once, ``workers`` at most) with the retry policy
of :func:`herbid.data.download.get_json`. Base URLs can be pointed elsewhere (a test
server, a mirror) with ``base_url=`` or ``HERBID_IDIGBIO_URL`` / ``HERBID_GBIF_URL``; one
on a loopback or private address (and any redirect there) is refused unless
``allow_private_hosts``, as image downloads are.

The sources themselves live in :mod:`herbid.data.sources.gbif` and
:mod:`herbid.data.sources.idigbio`, on the paging machinery of
:mod:`herbid.data.sources.portal_search`; importing this module registers both (it is the
one :func:`~herbid.data.sources.base.open_source` loads) and keeps their names here.
"""

from herbid.data.sources.gbif import GBIF_MAX_OFFSET as GBIF_MAX_OFFSET
from herbid.data.sources.gbif import GBIFSource, gbif_records
from herbid.data.sources.idigbio import IDIGBIO_UUIDS_PER_LOOKUP as IDIGBIO_UUIDS_PER_LOOKUP
from herbid.data.sources.idigbio import IDigBioSource, idigbio_record
from herbid.data.sources.portal_search import parse_portal_query

__all__ = ["GBIFSource", "IDigBioSource", "gbif_records", "idigbio_record", "parse_portal_query"]
