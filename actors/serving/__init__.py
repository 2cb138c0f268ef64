"""The online service on Ray Serve: routes (`app`), HTTP bodies and audio encodings (`api`), error answers
(`errors`), auth and body limits (`auth`), resident models and leases (`models`), streamed bodies (`streaming`),
memory stats (`memory`), the application object (`deployment`) and its config (`config`)."""
