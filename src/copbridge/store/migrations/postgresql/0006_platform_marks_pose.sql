-- The capture time of the pose the sensor's last platform event showed: a detection taken
-- before it (an offline detector uploading its buffer) must not send the sensor back on the
-- map with an older position stamped as current. Marks written before this hold 0.
ALTER TABLE platform_marks ADD COLUMN pose_us BIGINT NOT NULL DEFAULT 0;
