"""dimsekit: DICOM message exchange (PS3.7) and the DICOM Upper Layer (PS3.8) on Twisted."""

__version__ = "0.1.0.dev0"

#: Our Implementation Class UID (PS3.7 D.3.3.2), under the UUID-derived root 2.25.
IMPLEMENTATION_CLASS_UID = "2.25.229730216473619428473591043416245851392"
#: Our Implementation Version Name (at most 16 characters).
IMPLEMENTATION_VERSION_NAME = "DIMSEKIT_010"
